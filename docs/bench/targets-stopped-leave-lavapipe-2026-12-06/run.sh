# revive bench edit, MEMIT, the first 20 geography requests in one batch, one context, C0 from
# 4096 tokens; BIN the binary before (b0d6775) or after the change; STEPS 12 or 25.
$BIN bench edit -m smollm2 --method memit --edits assets/facts/geo/edits.json.gz --limit 20 --batch 20 \
  --templates 0 --steps $STEPS --cov-tokens 4096 --out /tmp/be --json OUT.json
