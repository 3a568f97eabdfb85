"""Pull-request reporting: ``ganforge report`` turns DVC's metrics, params and plots diffs against a base
revision into a markdown comment and an HTML page, and gates on quality and speed budgets."""
