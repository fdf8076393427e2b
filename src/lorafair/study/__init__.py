"""How one study runs: the study file (config, schema), the pre-flight, the context a run
shares, and the stages (corpus, train, evaluate, counterfactual, analyses) with their executors."""
