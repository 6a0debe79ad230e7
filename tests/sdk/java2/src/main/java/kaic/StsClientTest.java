package kaic;

import software.amazon.awssdk.core.interceptor.Context;
import software.amazon.awssdk.core.interceptor.ExecutionAttributes;
import software.amazon.awssdk.core.interceptor.ExecutionInterceptor;
import software.amazon.awssdk.services.sts.StsClient;
import software.amazon.awssdk.services.sts.model.GetCallerIdentityResponse;

/**
 * Test client for the AWS SDK for Java 2.x: creates ONE StsClient with the default
 * credential chain (as an app in a pod would) and calls sts:GetCallerIdentity
 * --count times, --interval-ms apart. Prints "OK <arn> <access_key_id>" or
 * "ERR <message>" per call; exits 0 iff all calls were OK.
 *
 * <p>access_key_id is read from the SigV4 Authorization header of the request that
 * was sent (beforeTransmission sees the signed request, once per attempt), so it is
 * the key the SDK signed that call with; asking the provider (resolveCredentials)
 * instead could itself trigger a refresh.
 */
public final class StsClientTest {
  private static volatile String usedKey = "-";

  static String keyFromAuth(String auth) {
    int i = auth == null ? -1 : auth.indexOf("Credential=");
    if (i < 0) return "-";
    String rest = auth.substring(i + "Credential=".length());
    int j = rest.indexOf('/');
    return j < 0 ? "-" : rest.substring(0, j);
  }

  private static String oneLine(Throwable t) {
    return (t.getClass().getName() + ": " + t.getMessage()).replaceAll("\\s+", " ").trim();
  }

  public static void main(String[] args) throws Exception {
    int count = 1;
    long intervalMs = 0;
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      if (a.equals("--count")) count = Integer.parseInt(args[++i]);
      else if (a.startsWith("--count=")) count = Integer.parseInt(a.substring(8));
      else if (a.equals("--interval-ms")) intervalMs = Long.parseLong(args[++i]);
      else if (a.startsWith("--interval-ms=")) intervalMs = Long.parseLong(a.substring(14));
      else {
        System.err.println("usage: java2 [--count N] [--interval-ms M]");
        System.exit(2);
      }
    }

    // Test machines have no instance metadata service and must not send traffic to
    // 169.254.169.254: unless the caller says otherwise, keep the chain's IMDS step off.
    if (System.getenv("AWS_EC2_METADATA_DISABLED") == null
        && System.getProperty("aws.disableEc2Metadata") == null) {
      System.setProperty("aws.disableEc2Metadata", "true");
    }
    ExecutionInterceptor capture = new ExecutionInterceptor() {
      @Override
      public void beforeTransmission(Context.BeforeTransmission ctx, ExecutionAttributes attrs) {
        usedKey = keyFromAuth(ctx.httpRequest().firstMatchingHeader("Authorization").orElse(null));
      }
    };
    boolean failed = false;
    StsClient client;
    try {
      // No credentialsProvider(): the client builds the SDK's default chain itself.
      client = StsClient.builder()
          .overrideConfiguration(c -> c.addExecutionInterceptor(capture))
          .build();
    } catch (RuntimeException e) {
      System.out.println("ERR " + oneLine(e));
      System.out.flush();
      System.exit(1);
      return;
    }
    for (int i = 0; i < count; i++) {
      if (i > 0 && intervalMs > 0) Thread.sleep(intervalMs);
      usedKey = "-";
      try {
        GetCallerIdentityResponse out = client.getCallerIdentity();
        System.out.println("OK " + out.arn() + " " + usedKey);
      } catch (RuntimeException e) {
        System.out.println("ERR " + oneLine(e));
        failed = true;
      }
      System.out.flush();
    }
    client.close();
    System.exit(failed ? 1 : 0);
  }
}
