"""Names of the records in the messages between the server and the devices, beyond Flower's
own ``arrays`` (the weights a strategy aggregates) and ``metrics``."""

#: The global weights of the parts a federation does not train: devices load them, never send
#: them back, and the strategies never aggregate them.
FROZEN_RECORD = "frozen"

#: The ``FitIns`` config keys of a secure round (SecAgg+ speaks Flower's legacy records): the
#: round, the names of the arrays sent (in order, one per line) and how many of the first are
#: trained (the rest are frozen).
SECURE_ROUND_KEY, SECURE_NAMES_KEY, SECURE_TRAINED_KEY = "server-round", "names", "trained"
