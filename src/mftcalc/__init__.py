"""mftcalc: one DPA3-style model that is both a machine-learned force field and a property predictor.

Multi-task fine-tuning (MFT) keeps the pretrained force-field head while learning a property, so one ASE
calculator relaxes a structure and predicts its property.
"""
__version__ = "0.1.0"
