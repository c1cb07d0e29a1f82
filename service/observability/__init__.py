"""What operators see: one log line per request, request ids, Prometheus metrics and OpenTelemetry traces.

The turn path and the upstream client call into `turns` and `record` with one line each; everything else lives
here, so the request path itself stays readable."""
