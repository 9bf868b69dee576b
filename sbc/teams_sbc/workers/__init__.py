"""Several worker processes for one SBC (config ``workers`` > 1, Linux).

- :mod:`~teams_sbc.workers.supervisor`: the process ``teams-sbc run`` becomes. Starts the
  workers, restarts one that ends, forwards SIGTERM and waits for the drain, serves
  /healthz, /readyz, /metrics and /teams for all of them, and writes the pod annotation.
- :mod:`~teams_sbc.workers.worker`: one worker, the same SBC as a single process
  (``teams_sbc.app``) in a :class:`~teams_sbc.workers.seat.Seat`.
- :mod:`~teams_sbc.workers.seat`: what a worker is told, and its log field.
- :mod:`~teams_sbc.workers.aggregate`: the workers' metrics merged into one /metrics.
- :mod:`~teams_sbc.workers.teams`: the workers' views of Microsoft's proxies combined into one
  /teams (and the pod annotation).

How SIP traffic is shared, and its limits: docs/architecture.md, "Worker processes".
"""
