"""The scheduler: the suite's source of truth and the part that decides.

It owns users and tokens, workflows and their event logs, runners and their sessions,
and placement. Rooms: `config` (settings), `errors`, `server` (wiring), the servicers
(`workflow_servicer`, `user_servicer`, `session_servicer`), the pure `core` (state machine,
placeholders, placement, graph validation) and the adapters (`db`, `storage_client`).
"""
