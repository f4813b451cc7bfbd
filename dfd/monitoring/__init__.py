"""Production monitoring: served-traffic records, the model's reference statistics, and drift of the traffic."""
