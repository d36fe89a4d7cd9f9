"""Everything that imports Rasa: tracker -> context, the policy, the in-process NLG,
Rasa model archives, and the response/slot names they share."""
