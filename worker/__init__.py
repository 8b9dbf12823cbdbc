"""The worker process: claims tasks over HTTP, runs them in a pool, reports results."""
