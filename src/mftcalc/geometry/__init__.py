"""Internal coordinates, B-vectors, Lindh model Hessian and the unit constants: one definition of each."""
