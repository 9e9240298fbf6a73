"""The benchmark library: training cost against the matmul peak, time to accuracy, and
serving speed by runtime."""
