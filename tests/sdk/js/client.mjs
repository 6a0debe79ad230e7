// Test client for the AWS SDK for JavaScript v3: creates ONE STSClient with the
// default credential chain (as an app in a pod would) and calls
// sts:GetCallerIdentity --count times, --interval-ms apart.
// Prints "OK <arn> <access_key_id>" or "ERR <message>" per call; exit 0 iff all OK.
// <access_key_id> is read from the SigV4 Authorization header of the request that
// was sent, so it is the key the SDK signed that call with; calling
// client.config.credentials() instead can itself trigger a refresh and report a
// key other than the one the call used.
import { writeSync } from "node:fs";
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";

function arg(name, dflt) {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === name) return argv[i + 1];
    if (argv[i].startsWith(name + "=")) return argv[i].slice(name.length + 1);
  }
  return dflt;
}
// writeSync on fd 1: the line is out before the next call, even into a pipe.
const say = (line) => writeSync(1, line + "\n");
const oneLine = (e) =>
  `${(e && e.name) || "Error"}: ${(e && e.message) || e}`.replace(/\s+/g, " ").trim();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const count = parseInt(arg("--count", "1"), 10);
const interval = parseInt(arg("--interval-ms", "0"), 10);

// Test machines have no instance metadata service and must not send traffic to
// 169.254.169.254: unless the caller says otherwise, keep the chain's IMDS step off.
if (process.env.AWS_EC2_METADATA_DISABLED === undefined) process.env.AWS_EC2_METADATA_DISABLED = "true";
const client = new STSClient({});
let usedKey = "-";
// The deserialize step runs after signing (finalizeRequest step), once per attempt.
client.middlewareStack.add(
  (next) => async (args) => {
    const h = (args.request && args.request.headers) || {};
    const auth = h.authorization || h.Authorization || "";
    const m = /Credential=([^/]+)\//.exec(auth);
    usedKey = m ? m[1] : "-";
    return next(args);
  },
  { step: "deserialize", name: "kaicCaptureAccessKey", priority: "low" },
);
let failed = false;
for (let i = 0; i < count; i++) {
  if (i > 0 && interval > 0) await sleep(interval);
  try {
    usedKey = "-";
    const out = await client.send(new GetCallerIdentityCommand({}));
    say(`OK ${out.Arn} ${usedKey}`);
  } catch (e) {
    say(`ERR ${oneLine(e)}`);
    failed = true;
  }
}
client.destroy();
process.exit(failed ? 1 : 0);
