"""What answers a request: the request checks, the Python steps, the graph runners and the chain."""
