"""The benchmarks behind `sensorcast bench ...`, one module each (accuracy, intervals, latency,
retrain, soak), their shared reporting in `report`. Speed and accuracy are measured here, never
asserted by timed tests."""
