#!/bin/bash
# A MEMIT batch of 100 geography requests at reduced settings on lavapipe (issue 10 §4), with
# one forward pass of a short prompt measured in the same run as the baseline.
/usr/bin/time -v revive bench edit --method memit --edits assets/facts/geo/edits.json.gz --batch 100 --limit 100 \
  --templates 0 --steps 12 --cov-tokens 4096 --out /tmp/b100/out --json memit-100.json
