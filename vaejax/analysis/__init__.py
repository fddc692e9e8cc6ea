"""Pure numerics on feature matrices, used by evaluations and first stages.

  kmeans.py              k-means(++) and cluster accuracy
  gmm.py                 Gaussian mixtures by EM (diagonal and full)
  mixture_classifier.py  the Gaussian-mixture linear classifier by EM
  probes.py              linear probes (logistic regression, optax L-BFGS)
  pca.py                 principal axes and PCA projections
  clustering.py          k-means / EM-GMM cluster accuracy of a representation
  inputs.py              input checks shared by the fitting functions

Nothing here knows about models, experiments or workdirs.
"""
