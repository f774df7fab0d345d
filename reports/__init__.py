"""Figures and reports. Reads only the trace schema and run directories, never
live objects, so measured and simulated runs look the same here."""
