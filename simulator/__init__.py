"""The discrete-event simulator (SimPy). Never imports torch; of ``runtime`` it
imports only ``runtime.policies``, so one policy object drives both."""
