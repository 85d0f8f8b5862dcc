"""The training side of supermask (``supermask.train``): find supermasks of any network and pack
them into tickets. Importing this package is light; torch is imported when work starts.

Modules, in the order data flows through them:

============  ===================================================================
config        FindConfig: defaults, validation and the identity (hashes) of a run
data          models (built-in names, ``module:factory`` specs) and data (named
              sets, .npz, image folders, arrays, torch datasets)
subject       the plan of a network: what happens to each of its tensors
loop          dense training, prediction, BatchNorm statistics
learned       learned masks (edge-popup, Bernoulli)
criteria      score functions and top-k selection
masks         scores -> masks -> the tensors of a masked network
runs          the run folder and its files
find          the orchestration of a run
pack          a run's supermask -> a version-3 ticket with its ONNX graph
sweep         find over several models, data sets and seeds
============  ===================================================================

api           the library entry points: ``supermask.find`` and ``supermask.pack``
============  ===================================================================
"""

