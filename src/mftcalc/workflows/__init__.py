"""Workflows on top of the calculator: relax-then-predict screening and phonons."""
