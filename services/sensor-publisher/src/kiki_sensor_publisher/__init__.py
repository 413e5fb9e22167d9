"""kiki-sensor-publisher."""
