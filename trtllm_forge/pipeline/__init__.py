"""Stage graph, stage keys and the runner."""
