"""Infrastructure every layer may use: the verified cache (:mod:`.cache`), one-line argument
checks (:mod:`.checks`), reading notebook parameters (:mod:`.notebooks`), figures and tables
(:mod:`.plotting`), README regions and notebook clean-up (:mod:`.report`), the notebooks'
opening (:mod:`.session`) and seed sweeps with papermill (:mod:`.sweep`). It imports nothing
from the other layers."""
