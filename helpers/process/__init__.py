"""Process tools below the stages: time guards, process pools, atomic writes, the work-dir lock.

fetch/, filter/, relax/ and analysis/ use them; :mod:`helpers.run` only orchestrates the stages.
Nothing here imports another part of :mod:`helpers`.
"""
