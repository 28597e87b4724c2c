"""How an error's fix names a run option: a command-line user and a Python caller (`edgepress.run`) each read the
spelling they type, from one place."""

OUT = "--out (out= in Python)"
ADOPT = "--adopt (adopt=True in Python)"
FROM = "--from (rerun_from= in Python)"
FORCE = "--force (force=True in Python)"
