"""Statistics: intervals for the crossed prompt × seed design, group metrics, equivalence
decisions and the result contract every task returns."""
