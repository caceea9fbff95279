"""What the eigenvectors are compared with, and how: subspace geometry (:mod:`.geometry`) and
its chance levels (:mod:`.nulls`), Fourier families on Z_p (:mod:`.fourier`), candidate
directions (:mod:`.directions`), scoring directions against labels (:mod:`.scoring`) and its
significance (:mod:`.significance`), causal tests (:mod:`.causal`) and the alignment over
training (:mod:`.dynamics`)."""
