"""Everything that imports Rasa: tracker -> context, the policy, the in-process NLG,
Rasa model archives, the response/slot names they share, tracker stores read as corpora,
scripted replays through Rasa's Agent, and the atomic Redis lock store for replicas."""
