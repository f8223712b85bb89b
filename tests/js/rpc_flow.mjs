// A dapp's flow with ethers v6 against one JSON-RPC URL: run by tests/integration/test_rpc_clients.py.
//
//   RPC_URL=... RPC_API_KEY=... PRIVATE_KEY=0x... CONTRACT_JSON=tally.json \
//   TRANSFER_WEI=... TALLY_START=... TALLY_ADDS=7,35 node tests/js/rpc_flow.mjs
//
// It knows nothing of ESP: a URL, a bearer token for its Authorization header, a
// key it signs with. It sends a transfer, deploys the contract of CONTRACT_JSON
// ({"abi": [...], "bytecode": "0x..."}; constructor(uint256 start), add(uint256)
// emitting Added(address indexed by, uint256 amount, uint256 total), views
// total() and creator()), calls it, reads receipts and logs, and prints one JSON
// object of what it saw on stdout (integers as decimal strings). The test judges.
// Any error exits non-zero with the error on stderr.
import { readFileSync } from "node:fs";

import { ethers } from "ethers";

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
};

// Look for receipts every 250 ms, not ethers' default 4 s: the devnet makes a block a second.
const POLLING_MS = 250;
const WAIT_MS = 60_000;

const text = (value) => (typeof value === "bigint" ? value.toString() : value);

async function mined(tx) {
  const receipt = await tx.wait(1, WAIT_MS);
  if (receipt === null || receipt.status !== 1) {
    throw new Error(`transaction ${tx.hash} did not succeed: ${JSON.stringify(receipt)}`);
  }
  return receipt;
}

function eventsOf(contract, logs) {
  return logs.map((log) => {
    const parsed = contract.interface.parseLog(log);
    return {
      name: parsed.name,
      by: parsed.args.by,
      amount: text(parsed.args.amount),
      total: text(parsed.args.total),
      address: log.address,
      block: log.blockNumber,
      tx: log.transactionHash,
    };
  });
}

async function main() {
  const request = new ethers.FetchRequest(env("RPC_URL"));
  request.setHeader("Authorization", `Bearer ${env("RPC_API_KEY")}`);
  request.timeout = 30_000;
  // staticNetwork: ask the chain id once, not before every request. cacheTimeout -1: ethers answers a
  // request repeated within 250 ms from its own cache, so a transaction mined that soon after its nonce
  // was read would give the next one the same "pending" nonce (nonce too low at one block a second).
  const provider = new ethers.JsonRpcProvider(request, undefined, {
    staticNetwork: true,
    pollingInterval: POLLING_MS,
    cacheTimeout: -1,
  });
  const wallet = new ethers.Wallet(env("PRIVATE_KEY"), provider);
  const artifact = JSON.parse(readFileSync(env("CONTRACT_JSON"), "utf8"));
  const start = BigInt(env("TALLY_START"));
  const adds = env("TALLY_ADDS").split(",").map(BigInt);
  const out = { address: wallet.address, chainId: text((await provider.getNetwork()).chainId) };

  // 1. An ETH transfer to a new address.
  const recipient = ethers.Wallet.createRandom().address;
  const sent = await wallet.sendTransaction({ to: recipient, value: BigInt(env("TRANSFER_WEI")) });
  const transferReceipt = await mined(sent);
  const seen = await provider.getTransaction(sent.hash);
  const block = transferReceipt.blockNumber;
  out.transfer = {
    hash: sent.hash,
    receiptHash: transferReceipt.hash,
    block,
    from: seen.from,
    to: seen.to,
    value: text(seen.value),
    nonce: seen.nonce,
    fee: text(transferReceipt.fee),
    recipient,
    recipientBefore: text(await provider.getBalance(recipient, block - 1)),
    recipientAfter: text(await provider.getBalance(recipient, block)),
    recipientLatest: text(await provider.getBalance(recipient)),
    senderBefore: text(await provider.getBalance(wallet.address, block - 1)),
    senderAfter: text(await provider.getBalance(wallet.address, block)),
  };

  // 2. Deploy through a ContractFactory, then call its views.
  const factory = new ethers.ContractFactory(artifact.abi, artifact.bytecode, wallet);
  const contract = await factory.deploy(start);
  await contract.waitForDeployment();
  const deployReceipt = await mined(contract.deploymentTransaction());
  const contractAddress = await contract.getAddress();
  out.deploy = {
    address: contractAddress,
    receiptAddress: deployReceipt.contractAddress,
    block: deployReceipt.blockNumber,
    fee: text(deployReceipt.fee),
    code: await provider.getCode(contractAddress),
    total: text(await contract.total()),
    creator: await contract.creator(),
  };

  // 3. State-changing calls that emit Added, each waited for; the events from their receipts.
  out.adds = [];
  for (const amount of adds) {
    const receipt = await mined(await contract.add(amount));
    out.adds.push({
      hash: receipt.hash,
      block: receipt.blockNumber,
      fee: text(receipt.fee),
      events: eventsOf(contract, receipt.logs),
      totalThen: text(await contract.total({ blockTag: receipt.blockNumber })),
    });
  }
  out.total = text(await contract.total());

  // 4. eth_getLogs over block ranges: all the adds, the first only, and before them (none).
  const first = out.adds[0].block;
  const last = out.adds[out.adds.length - 1].block;
  const logs = (filter) => provider.getLogs({ address: contractAddress, ...filter }).then((found) => eventsOf(contract, found));
  out.logs = {
    range: [first, last],
    all: await logs({ fromBlock: first, toBlock: last }),
    firstOnly: await logs({ fromBlock: out.deploy.block, toBlock: first }),
    before: await logs({ fromBlock: out.deploy.block, toBlock: first - 1 }),
    byAddedTopic: await logs({ fromBlock: out.deploy.block, toBlock: last, topics: [contract.interface.getEvent("Added").topicHash] }),
  };
  out.senderAtEnd = text(await provider.getBalance(wallet.address, last));
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${error.stack || error}\n`);
    process.exit(1);
  },
);
