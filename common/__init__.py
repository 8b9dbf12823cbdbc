"""What the dispatcher, the worker and the CLIs share: configuration, logging, the client."""
