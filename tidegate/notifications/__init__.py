"""Security notifications: leaked keys, new IPs, expiring keys, Full Access keys, key creation
switched off or on, failed-auth bursts; shown in the web UI and sent to webhooks.

- `events`: which audit events notify, and how they read.
- `source`: audit events -> notifications and queued deliveries (a cursor, transactional).
- `webhooks`: an organization's webhooks (checked URLs, encrypted secrets, signing).
- `delivery`: the worker that sends, signs and retries deliveries, once across nodes.
"""
