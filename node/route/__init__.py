"""Route stage: decide when a received study is complete, which rules take it and which series to register (the
rules in force: node.yaml or the console's latest saved version); enqueues one job per decision."""
