"""The Ray cluster trials run on, apart from any one sweep:

- `launcher`: a cluster YAML of Ray's cluster launcher (`ray up`) checked before use, and an
  on-prem cluster stopped (`stablesweep cluster check FILE`, `stablesweep cluster stop`);
- `live`: a running cluster checked from a driver joined to it (`stablesweep cluster check
  --address`), and an address that nothing answers on refused at once;
- `shape`: what trials can use of the cluster: alive nodes, the node types an autoscaler may add;
- `storage`: `--out` as the storage every node shares, and where a run's own files go.

What a sweep's or ramp's options ask of the cluster (a trial's resources, the checks of the run
options against the shape and the storage) is `stablesweep.sweep.placement`.
"""
