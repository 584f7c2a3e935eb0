"""The pure core: sketches, statistics, drift tests, windows, references and alert policy. No Kafka."""
