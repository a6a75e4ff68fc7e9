"""Networks (issue 15): CNI bridge networks, tasks attached to them, published ports."""
