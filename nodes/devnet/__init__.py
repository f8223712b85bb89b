"""A local multi-node Ethereum network on ONE chain, built from anvil nodes.

anvil has no peer-to-peer sync, so ESP does what a real node does when it
imports a block: it re-executes the block's transactions. One node, the
*leader*, mines (interval mining by default). Every *follower* runs without
mining and imports each new leader block by re-execution, checking that its
hash and state root are the leader's. Every node starts from the same genesis
(timestamp, chain id, gas limit, dev accounts) and orders its pool FIFO, so
the same transactions sent one after the other on the same parent give the
same block (measured here: identical hashes and state roots).

The package, one job per module:

- ``devnet``: :class:`~nodes.devnet.devnet.Devnet`, the nodes, their roles,
  restarts and the leader's hand-over; what the node manager runs.
- ``sync``: one thread per follower keeps it on the leader's chain, round by
  round; a promotion pauses the rounds.
- ``importer``: :class:`~nodes.devnet.importer.BlockImporter`, block import by
  re-execution into one follower.
- ``forwarding``: transaction gossip, a follower's pool moved to the leader's.
- ``handover``: what a change of leader needs: a settled head, the orphaned
  blocks' transactions re-sent, the dead leader's grace period.
"""
