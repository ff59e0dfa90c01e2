"""L3 — the compiler: spec → traced layer graphs → correspondence (mapping, calibration) →
generated module and renders; and the one answer to which weights the guide uses."""
