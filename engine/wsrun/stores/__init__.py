"""Where state lives: entities, the bus, the product archive, object stores,
each an interface with backends chosen by URL."""
