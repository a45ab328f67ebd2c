"""Quality instruments for SinFusion models (paper section 7, appendix A).

nnf         NNFDIV / NNFDIST: PatchMatch over 3x3x3 space-time patches into the original clip
nextframe   next-frame prediction on unseen frames against the copy-the-frame baseline
stability   generated clips and long extrapolations scored with NNF, per clip and per frame
plots       matplotlib figures (figure-8 style curves, stability curves, NNF colour maps)
cli         the `sinfusion-quality` command

The package uses the core (sinfusion) and, to train the next-frame models, the trainer library.
"""
