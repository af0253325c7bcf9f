"""The local target: a data plane on loopback that serves the listeners moto only describes."""
