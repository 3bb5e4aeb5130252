"""Operating the connector: alerting and data protection that sit beside the dataflow.

Nothing here runs in the dataflow's hot loop. :mod:`connectors.ops.webhooks` tells a team about
trouble when it has no Alertmanager (a Teams or Slack webhook is enough), and
:mod:`connectors.ops.crypto` keeps dead-letter entries and other persisted record data encrypted at
rest, with key rotation that a crash cannot leave half done. The Prometheus rules and the
Grafana dashboard that watch the same metrics live in ``deploy/``.
"""
