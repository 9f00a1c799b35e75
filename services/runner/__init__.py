"""The runner: the agent beside each ComfyUI (`python -m services.runner`).

    config.py            RunnerSettings from flags and environment (read once in main)
    errors.py            the package's exception tree
    server.py            wiring: builds the parts, runs them, stops them on SIGTERM
    pool.py              pool mode: one agent per runner registered through the API (WatchPool)
    session.py           the scheduler stream: Hello/Welcome, heartbeats, reconnect, resend
    outbox.py            events numbered by runner_seq, kept until safely delivered
    agent.py             the held executions, slots, Assignment/Cancel/Drain/abandon
    execution.py         one Assignment end to end on ComfyUI
    output_store.py      outputs from ComfyUI's /view into storage
    comfyui_feed.py      the one websocket to ComfyUI, demultiplexed by prompt id
    comfyui_watch.py     readiness: no Hello until ComfyUI answers; its version and node schemas
    comfyui_client.py    adapter: ComfyUI's HTTP API and websocket (aiohttp)
    storage_client.py    adapter: the storage service's object streams
    comfyui_messages.py  pure: ComfyUI messages and history -> steps of one prompt
    prompt_graph.py      pure: $file substitution, node errors, queue position
    media_types.py       pure: an output's content type from its extension
    (services/common/comfy_schemas.py: /object_info parsing and value coercion;
     services/common/comfy_graph.py: UI-format -> API-format conversion; both pure, shared)
    events.py            RunnerEvent builders
"""
