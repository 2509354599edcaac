"""Machine learning: models, model runtime, registry of restorers, inference, imaging."""
