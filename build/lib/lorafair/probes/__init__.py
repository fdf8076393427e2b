"""Bias probes (CrowS-Pairs, StereoSet, BBQ) scored by a language model's log-likelihoods."""
