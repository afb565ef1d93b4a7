"""Search strategies: each searches a space through hooks on the one trainer and emits architecture JSON."""
