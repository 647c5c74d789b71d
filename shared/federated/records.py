"""Names of the records in the messages between the server and the devices, beyond Flower's
own ``arrays`` (the weights a strategy aggregates) and ``metrics``."""

#: The global weights of the parts a federation does not train: devices load them, never send
#: them back, and the strategies never aggregate them.
FROZEN_RECORD = "frozen"
