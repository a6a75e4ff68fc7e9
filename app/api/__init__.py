"""The HTTP layer: routers (HTTP shape only), problem responses, dependencies, middleware."""
