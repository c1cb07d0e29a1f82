"""What keeps one client or tenant from hurting the others: request rates, turns in flight, the share of the
upstream pool, stream write and connection timeouts, size caps, and refusals of inputs nothing can hold."""
