"""`abgate demo` (a development tool): imported lazily, never by the gateway or the controller."""
