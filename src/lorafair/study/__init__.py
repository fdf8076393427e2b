"""How one study runs: the study file (config, schema), the pre-flight, the Session a run shares,
the table of stages (corpus, train, evaluate, counterfactual, compare, analyses, report) and the jobs and executors they use."""
