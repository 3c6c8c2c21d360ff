"""The stability study (rating versus ranking) and position bias: pure statistics, no I/O."""
