"""MLflow, as sensorcast uses it: the registry (versions and aliases), run tracking, and the pyfunc face
of a checkpoint."""
