"""Webhooks: signed HTTP deliveries of a user's workflow events (issue 7, item 5).

    dispatcher.py  events -> delivery rows: tails each user's events (workflow_events.user_seq)
                   after a durable cursor; deliveries and the cursor commit together
    worker.py      delivery rows -> HTTP attempts, retried with backoff; every attempt recorded
    sender.py      the HTTP client (aiohttp): no redirects, a capped read, targets re-checked
                   at connect time (a resolver that refuses denied addresses)
    service.py     what users do: endpoints, delivery logs, redeliver, the workflow secret
    servicer.py    WebhookService over gRPC; CreateWorkflow/RunTemplate with a webhook_url
    store.py       the tables (db/models.py: webhook_*)
    runtime.py     wiring: the objects above for one active scheduler
    Pure core:     signing.py (Standard Webhooks), events.py (types, filters, bodies),
                   backoff.py (retry schedule), targets.py (allow/deny policy),
                   sealing.py (secrets encrypted at rest), settings.py, errors.py
"""
